"""AWS Lambda entry point (``Handler: handler.aws_lambda.handler``): the app is built once per container, at import.

Then what the start-up made (modules, plugins, the app) is frozen out of the garbage collector's view
(``gc.freeze``): it lives as long as the container, and no invoke should pay for scanning it again. A full
collection over it costs about 6 ms on a cold container, as does the interpreter's final one.
"""

import gc

from dpmsf_core.aws.lambda_adapter import build_handler

handler = build_handler()
gc.freeze()
