#!/bin/sh
# Lots of stderr, then the interesting last line, then a non-zero exit.
i=0
while [ $i -lt 100 ]; do echo "noise line $i ................................" >&2; i=$((i+1)); done
echo "THE REAL PROBLEM: disk on fire" >&2
exit 3
