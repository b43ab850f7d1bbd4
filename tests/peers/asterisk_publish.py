#!/usr/bin/env python3
"""Publish device states exactly as res_xmpp does (EID 00:11:22:33:44:55, flat mode, item id =
device name), as an Asterisk box sharing keys with the fabric. Exits 1 if any publish is
refused (prints the error).

A pair `mailbox:MAILBOX@CONTEXT=NEW/OLD` publishes a mailbox's counts instead, as res_xmpp's
`xmpp_pubsub_publish_mwi` does (node message_waiting, item id MAILBOX@CONTEXT, NEWMSGS/OLDMSGS).

usage: asterisk_publish.py HOST PORT JID PASSWORD SERVICE KEY=STATE...
"""
import asyncio
import sys
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

import slixmpp

HOST, PORT, JID, PASSWORD, SERVICE = sys.argv[1:6]
PAIRS = [a.split("=", 1) for a in sys.argv[6:]]


def mwi_xml(key, counts):
    new, old = counts.split("/", 1)
    return ("<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='message_waiting'>"
            f"<item id={quoteattr(key)}><mailbox xmlns='http://asterisk.org' eid='00:11:22:33:44:55'>"
            f"<NEWMSGS>{int(new)}</NEWMSGS><OLDMSGS>{int(old)}</OLDMSGS></mailbox>"
            "</item></publish></pubsub>")


def state_xml(key, state):
    return ("<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='device_state'>"
            f"<item id={quoteattr(key)}><state xmlns='http://asterisk.org' eid='00:11:22:33:44:55' cachable='1'>{state}</state>"
            "</item></publish></pubsub>")


class Peer(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(JID, PASSWORD)
        self.register_plugin("xep_0060")
        self.enable_direct_tls = False
        self.enable_starttls = False
        self.enable_plaintext = True
        self["feature_mechanisms"].unencrypted_plain = True
        self["feature_mechanisms"].unencrypted_scram = True
        self.add_event_handler("session_start", self.start)
        self.failed = None

    async def start(self, _):
        try:
            for key, state in PAIRS:
                iq = self.Iq(stype="set", sto=SERVICE)
                if key.startswith("mailbox:"):
                    iq.append(ET.fromstring(mwi_xml(key[len("mailbox:"):], state)))
                else:
                    iq.append(ET.fromstring(state_xml(key, state)))
                await iq.send(timeout=10)
            print("PUBLISHED", flush=True)
        except Exception as e:  # report, never hang
            self.failed = repr(e)
        self.disconnect()


peer = Peer()
peer.connect(host=HOST, port=int(PORT))
loop = asyncio.get_event_loop()
loop.run_until_complete(asyncio.wait_for(peer.disconnected, 30))
if peer.failed:
    print("ERROR", peer.failed, file=sys.stderr)
    sys.exit(1)
