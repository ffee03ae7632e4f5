#!/bin/sh
printf '  plain text, not JSON  \n\n'
