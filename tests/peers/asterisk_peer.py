#!/usr/bin/env python3
"""A stand-in for a real Asterisk box on the fabric, built on slixmpp.

publish: sends, as the given account, the exact res_xmpp publish stanzas of an Asterisk with
         EID 00:11:22:33:44:55 (flat mode): PJSIP/1000 INUSE (cachable) and MWI 1000@default 2/5.
fetch:   reads back the raw items of device_state and message_waiting and prints one line per
         item: ITEM <node> <item id> <payload XML>.

usage: asterisk_peer.py HOST PORT JID PASSWORD SERVICE publish|fetch
"""
import asyncio
import sys
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.xmlstream import tostring

HOST, PORT, JID, PASSWORD, SERVICE, ACTION = sys.argv[1:7]

# Byte for byte what res_xmpp builds (docs: wire-format.md §1.4), minus the iq envelope that
# slixmpp adds with the same to/type.
STATE = ("<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='device_state'>"
         "<item id='PJSIP/1000'><state xmlns='http://asterisk.org' eid='00:11:22:33:44:55' cachable='1'>INUSE</state>"
         "</item></publish></pubsub>")
MWI = ("<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='message_waiting'>"
       "<item id='1000@default'><mailbox xmlns='http://asterisk.org' eid='00:11:22:33:44:55'>"
       "<NEWMSGS>2</NEWMSGS><OLDMSGS>5</OLDMSGS></mailbox></item></publish></pubsub>")


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
            if ACTION == "publish":
                for xml in (STATE, MWI):
                    iq = self.Iq(stype="set", sto=SERVICE)
                    iq.append(ET.fromstring(xml))
                    await iq.send(timeout=10)
                print("PUBLISHED", flush=True)
            elif ACTION == "fetch":
                for node in ("device_state", "message_waiting"):
                    res = await self["xep_0060"].get_items(SERVICE, node, timeout=10)
                    for item in res["pubsub"]["items"]:
                        payload = item.xml[0] if len(item.xml) else None
                        text = tostring(payload) if payload is not None else ""
                        print("ITEM", node, item["id"], text, flush=True)
                print("FETCHED", flush=True)
            else:
                self.failed = f"unknown action {ACTION}"
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
