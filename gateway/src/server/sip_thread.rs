//! The SIP core's own thread (issue 16): the gateway's core task and its SIP listeners run on
//! a single-threaded tokio runtime on a thread of their own (`sip-core`), beside the process's
//! multi-threaded runtime (HTTP, the bus, the database, the register shards, the ACD).
//!
//! Why: every datagram crosses from its listener task to the core task. On the multi-threaded
//! runtime the two sat on different workers, so each hand-off woke a parked worker (a futex,
//! an inter-processor interrupt, the woken worker's `epoll_wait`) and idle workers searched
//! for work to steal. Measured with `register_bench` (docs/BENCHMARKS.md): the same build
//! took 26–27 µs of CPU per REGISTER pair on one tokio worker against 31–32 µs on two, the
//! difference all kernel time; Kamailio's workers, which receive and answer on the same
//! process, took 23 µs. On one thread a hand-off is a push on the thread's own run queue.
//! The core is one task either way, so its throughput is one core's in both designs; the
//! work that parallelises (authenticating REGISTERs, `sip_shards`) stays on the
//! multi-threaded runtime.
//!
//! Dropping the [`SipThread`] ends its runtime: every task on it (the core, the listeners)
//! is dropped and the sockets close.

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How long the runtime waits for its blocking tasks when it ends.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// A single-threaded runtime on its own thread; ends when dropped.
#[derive(Debug)]
pub(super) struct SipThread {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl SipThread {
    /// Starts the thread, named `name`.
    pub(super) fn start(name: &str) -> std::io::Result<SipThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Until the owner drops its end.
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(SHUTDOWN_WAIT);
            })?;
        Ok(SipThread {
            handle,
            _stop: stop,
        })
    }

    /// Where to spawn the core's tasks.
    pub(super) fn handle(&self) -> &Handle {
        &self.handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_named_thread_and_end_with_it() {
        let t = SipThread::start("sip-test").expect("thread");
        let name = t
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .expect("task");
        assert_eq!(name.as_deref(), Some("sip-test"));
        // A task that never ends is dropped with the runtime: its socket closes.
        let (tx, rx) = oneshot::channel::<()>();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = sock.local_addr().expect("addr");
        t.handle().spawn(async move {
            let _tx = tx;
            let s = tokio::net::UdpSocket::from_std({
                sock.set_nonblocking(true).expect("nonblocking");
                sock
            })
            .expect("socket");
            let mut b = [0u8; 8];
            let _ = s.recv(&mut b).await;
        });
        drop(t);
        // The task's end (its sender dropped) shows the runtime ended.
        assert!(tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the runtime ended")
            .is_err());
        // The port is free again.
        std::net::UdpSocket::bind(addr).expect("rebind after the runtime ended");
    }
}
