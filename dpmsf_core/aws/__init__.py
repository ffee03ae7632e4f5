"""AWS specifics: the Lambda adapter (Mangum), non-HTTP events, Powertools observability, plugins from S3.

``lambda_adapter.build_handler()`` is what ``handler/aws_lambda.py`` serves; ``events`` routes SQS, SNS, S3,
EventBridge and schedule events to ``@expose.event`` functions; ``observability`` adds Powertools logs, metrics
and traces on Lambda; ``s3source`` mirrors an ``s3://`` plugin path into a local folder. Nothing is imported
here: boto3 and Powertools load only where they are used.
"""
