#!/usr/bin/env python3
"""A supervisor's XMPP client (slixmpp) watching agents' presence.

Logs in, sends initial presence, asks for the roster, subscribes to each CONTACT (bare JIDs of
the presence component), then prints one line per event until stdin closes:

  READY
  ROSTER <jid> <subscription> <ask>        (a roster push from the supervisor's own server)
  PRESENCE <ms since start> <bare from> <type> <show> <status>
      type: available, unavailable, subscribed, unsubscribed, ...; show: '-' when absent

Commands on stdin, one a line: `subscribe JID`, `unsubscribe JID`, `probe JID`,
`raw XML` (sent as is).

usage: presence_supervisor.py HOST PORT JID PASSWORD [CONTACT...]
"""
import asyncio
import sys
import time

import slixmpp

HOST, PORT, JID, PASSWORD = sys.argv[1:5]
CONTACTS = sys.argv[5:]
T0 = time.monotonic()


def out(*words):
    print(*words, flush=True)


class Supervisor(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(JID, PASSWORD)
        self.enable_direct_tls = False
        self.enable_starttls = False
        self.enable_plaintext = True
        self["feature_mechanisms"].unencrypted_plain = True
        self["feature_mechanisms"].unencrypted_scram = True
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("presence", self.on_presence)
        self.add_event_handler("roster_update", self.on_roster)

    def on_presence(self, p):
        frm = p["from"]
        if frm.bare == self.boundjid.bare:
            return
        ptype = p["type"] or "available"
        if ptype in ("chat", "away", "dnd", "xa"):  # slixmpp reports show as type
            ptype = "available"
        show = p["show"] or "-"
        status = p["status"].replace("\n", " ")
        ms = int((time.monotonic() - T0) * 1000)
        out("PRESENCE", ms, frm.bare, ptype, show, status)

    def on_roster(self, iq):
        for jid, item in iq["roster"]["items"].items():
            out("ROSTER", jid, item["subscription"], item["ask"] or "-")

    async def start(self, _):
        self.send_presence()
        await self.get_roster()
        for c in CONTACTS:
            self.send_presence(pto=c, ptype="subscribe")
        out("READY")
        asyncio.get_event_loop().create_task(self.commands())

    async def commands(self):
        loop = asyncio.get_event_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            words = line.split()
            if len(words) > 1 and words[0] == "raw":
                self.send_raw(line[len("raw "):].strip())
            elif len(words) == 2 and words[0] in ("subscribe", "unsubscribe", "probe"):
                self.send_presence(pto=words[1], ptype=words[0])
        self.disconnect()


def main():
    xmpp = Supervisor()
    xmpp.connect(host=HOST, port=int(PORT))
    asyncio.get_event_loop().run_until_complete(xmpp.disconnected)


if __name__ == "__main__":
    main()
