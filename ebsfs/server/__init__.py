"""The local EBS direct API and EC2 snapshot server (``ebsfs server``, docs/server.md).

Modules, each with one job, each knowing only those below it:

    runner     credentials, listening socket, sweeper thread, signals
    httpd      HTTP/1.1 transport: keep-alive connections, bounded bodies, sendfile
    app        one request: SigV4 check, faults, routing, errors in the family's shape
    ebs, ec2   the operations' handlers
    sigv4      signature verification        tokens    block and page tokens
    validate   framework input validation    faults    fault injection
    storage    SQLite metadata, block rows; puts acknowledged on their records, indexed later
    segments   self-describing block records in append-only pack files: append, sync,
               punch, scan, recover
    errors, wire   error classes, request/response records
"""
