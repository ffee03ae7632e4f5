"""AWS Lambda entry point (``Handler: handler.aws_lambda.handler``): the app is built once per container, at import."""

from dpmsf_core.aws.lambda_adapter import build_handler

handler = build_handler()
