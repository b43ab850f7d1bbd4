//! ACD: queues whose agents sit at any site (issue 5). Not written yet; the crate exists so
//! that the workspace layout is in place.
