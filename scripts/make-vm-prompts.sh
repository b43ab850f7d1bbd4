#!/bin/bash
# Regenerates the voicemail prompts in gateway/prompts/en/ (compiled into the gateway).
#
# Same recipe as scripts/make-prompts.sh (the ACD's): espeak-ng (en-us, 150 words/min), then sox to
# 8 kHz mono 8-bit G.711 mu-law WAV, silence trimmed, a 150 ms tail, normalised to -3 dBFS. Nothing is
# downloaded; the generated files are committed, so this is needed only to regenerate them
# (Debian: `apt-get install -y espeak-ng sox`). Deterministic (sox -R).
#
# Usage: bash scripts/make-vm-prompts.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in espeak-ng sox; do
  command -v "$tool" >/dev/null || { echo "make-vm-prompts.sh: $tool not found (apt-get install -y espeak-ng sox)" >&2; exit 1; }
done

out=gateway/prompts/en
mkdir -p "$out/digits"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ulaw=(-r 8000 -c 1 -e u-law -b 8)

say() {
  local file=$1 text=$2
  espeak-ng -v en-us -s 150 -w "$tmp/raw.wav" "$text"
  sox -R "$tmp/raw.wav" "${ulaw[@]}" "$tmp/out.wav" \
    silence 1 0.05 1% reverse silence 1 0.05 1% reverse \
    rate 8000 gain -n -3 pad 0 0.15
  mv -f "$tmp/out.wav" "$out/$file"
}

words=(zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
  fifteen sixteen seventeen eighteen nineteen twenty)
for n in "${!words[@]}"; do
  say "digits/$n.wav" "${words[$n]}"
done
tens=([30]=thirty [40]=forty [50]=fifty [60]=sixty [70]=seventy [80]=eighty [90]=ninety)
for n in "${!tens[@]}"; do
  say "digits/$n.wav" "${tens[$n]}"
done
say digits/hundred.wav "hundred"

# Asterisk's voicemail sound names where one exists.
say vm-intro.wav "The person you are calling is not available. Please leave a message after the tone. When done, hang up."
say vm-password.wav "Please enter your password, followed by the pound key."
say vm-incorrect.wav "Login incorrect."
say vm-youhave.wav "You have"
say vm-INBOX.wav "new"
say vm-Old.wav "old"
say vm-and.wav "and"
say vm-messages.wav "messages."
say vm-message.wav "message."
say vm-msgopts.wav "To hear this message again, press 1. To delete it, press 7. To save it, press 9. For the next message, press pound."
say vm-mainmenu.wav "To hear your messages, press 1. To record your greeting, press 5. To hang up, press star."
say vm-deleted.wav "Message deleted."
say vm-saved.wav "Message saved."
say vm-nomore.wav "No more messages."
say vm-rec-greeting.wav "Record your greeting after the tone. Press pound when done."
say vm-greeting-saved.wav "Your greeting is saved."
say vm-goodbye.wav "Goodbye."
