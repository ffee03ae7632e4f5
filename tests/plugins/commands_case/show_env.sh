#!/bin/sh
# The environment and working directory the program sees.
printf '{"cwd": "%s", "env": "' "$(pwd)"
env | tr '\n' ' ' | sed 's/"/ /g; s/\\/ /g'
printf '"}\n'
