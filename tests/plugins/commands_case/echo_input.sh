#!/bin/sh
# Echo stdin back: the test sees exactly the JSON the command sent.
cat
