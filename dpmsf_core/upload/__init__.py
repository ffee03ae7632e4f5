"""Plugin uploads over ``/rest/admin/plugins/<name>``: the handler, and where uploaded modules are stored.

``handler`` serves the admin routes (who may upload, read and delete what); ``stores`` checks an upload, stamps
its tenant and writes it to a folder or an S3 prefix. Nothing is imported here: a server without uploads pays
nothing.
"""
