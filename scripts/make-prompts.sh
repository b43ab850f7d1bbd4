#!/bin/bash
# Regenerates the shipped voice prompts: the ACD's in acd/prompts/en/ (see acd/prompts/README.md) and
# the voicemail's in gateway/prompts/en/ (compiled into the gateway).
#
# The prompts are synthesised locally -- nothing is downloaded -- with espeak-ng (voice en-us,
# 150 words/min) and converted with sox to what Asterisk's sounds are: 8 kHz, mono, 8-bit G.711
# mu-law WAV (WAVE_FORMAT_MULAW, format tag 7). Each spoken prompt has its leading and trailing
# silence trimmed, gets a short natural tail (150 ms) back, and is normalised to -3 dBFS.
# beep.wav is a 0.3 s 1 kHz sine tone made by sox alone.
#
# The generated files are committed; this script is needed only to regenerate them, not at build or
# test time. It needs espeak-ng and sox on PATH (Debian: `apt-get install -y espeak-ng sox`).
#
# Idempotent and deterministic: every run overwrites the same files with the same bytes (for a given
# espeak-ng and sox version); sox runs in repeatable mode (-R) and no random option is set.
#
# Usage: bash scripts/make-prompts.sh [acd|voicemail]    (no argument: both sets)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in espeak-ng sox; do
  command -v "$tool" >/dev/null || { echo "make-prompts.sh: $tool not found (apt-get install -y espeak-ng sox)" >&2; exit 1; }
done

which=${1:-all}
case $which in acd | voicemail | all) ;; *) echo "usage: make-prompts.sh [acd|voicemail]" >&2; exit 2 ;; esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Output encoding shared by every prompt: 8 kHz, mono, 8-bit mu-law.
ulaw=(-r 8000 -c 1 -e u-law -b 8)

# say FILE TEXT: speak TEXT into $out/FILE.
say() {
  local file=$1 text=$2
  espeak-ng -v en-us -s 150 -w "$tmp/raw.wav" "$text"
  sox -R "$tmp/raw.wav" "${ulaw[@]}" "$tmp/out.wav" \
    silence 1 0.05 1% reverse silence 1 0.05 1% reverse \
    rate 8000 gain -n -3 pad 0 0.15
  mv -f "$tmp/out.wav" "$out/$file"
}

# numbers [thousand]: the digits/N.wav Asterisk names (used by say_number) into $out.
numbers() {
  mkdir -p "$out/digits"
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
  if [ "${1:-}" = thousand ]; then say digits/thousand.wav "thousand"; fi
}

if [ "$which" != voicemail ]; then
  out=acd/prompts/en
  numbers thousand

  # Queue position / hold-time announcements and agent prompts (Asterisk's sound names).
  say queue-youarenext.wav "You are now first in line."
  say queue-thereare.wav "You are caller number"
  say queue-callswaiting.wav "waiting to speak to an agent."
  say queue-holdtime.wav "The estimated hold time is currently"
  say queue-minutes.wav "minutes."
  say queue-lessthan.wav "less than"
  say queue-thankyou.wav "Thank you for your patience."
  say agent-loginok.wav "Agent logged in."
  say agent-loggedoff.wav "Agent logged off."

  # A 0.3 s 1 kHz tone with 10 ms fades (no clicks), at -3 dBFS.
  sox -R -n "${ulaw[@]}" "$tmp/out.wav" synth 0.3 sine 1000 fade 0.01 0.3 0.01 gain -n -3
  mv -f "$tmp/out.wav" "$out/beep.wav"
  echo "make-prompts.sh: $(find "$out" -name '*.wav' | wc -l) prompts in $out"
fi

if [ "$which" != acd ]; then
  out=gateway/prompts/en
  numbers

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
  echo "make-prompts.sh: $(find "$out" -name '*.wav' | wc -l) prompts in $out"
fi
