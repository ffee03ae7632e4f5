"""Who is calling and what they may do: tokens, the replay store, the tenant registry and the app's security.

``tokens`` mints and verifies the single-use encrypted tokens; ``replay`` remembers used token ids; ``tenants``
keeps tenant ids and their keys (the DynamoDB registry in ``tenants_dynamodb``), wrapped at rest with the master
key (``keys``); ``security`` builds them for the app on first need; ``state_files`` keeps the local state
directory 0700 and its files 0600.

Nothing is imported here: ``from dpmsf_core.tenancy.security import LazySecurity`` must not load the
cryptography or boto3 of the modules it never uses.
"""
