"""File and object I/O: local folders and S3 addressed by key (`storage.objects.Storage`), and files
written whole or not at all (`storage.files`). Imports no other package of this project."""
