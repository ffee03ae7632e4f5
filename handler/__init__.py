"""Deployment entry points: ``handler.aws_lambda.handler`` (AWS Lambda) and ``handler.gae:app`` (App Engine)."""
