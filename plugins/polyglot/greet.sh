#!/bin/sh
# hello-shell: reads {"args": [...], "kwargs": {...}} on stdin, answers JSON on stdout (no jq needed).
input=$(cat)
name=$(printf '%s' "$input" | sed -n 's/.*"name": *"\([^"]*\)".*/\1/p')
args=$(printf '%s' "$input" | sed -n 's/^{"args": *\(\[.*\]\), *"kwargs".*/\1/p')
printf '{"hello": "%s", "args": %s, "lang": "shell"}\n' "${name:-world}" "${args:-[]}"
