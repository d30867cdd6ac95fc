"""The local EBS direct API and EC2 snapshot server (``ebsfs server``, docs/server.md).

Modules, each with one job, each knowing only those below it:

    runner     credentials, listening socket, sweeper thread, signals
    httpd      listening: connection slots, idle eviction, loopback Host names
    connection one HTTP/1.1 connection: heads parsed, bodies bounded, sendfile
    app        one request: SigV4 check, faults, routing, errors in the family's shape
    ebs        routing, StartSnapshot, PutSnapshotBlock, CompleteSnapshot
    ebsreads   ListSnapshotBlocks, ListChangedBlocks, GetSnapshotBlock
    ec2        DescribeSnapshots, DeleteSnapshot, tags; ec2attrs tiers and sharing;
               ec2base lookups and query parameters; ec2filters filters and wildcards
    sigv4      signature verification        tokens    block and page tokens
    validate   framework input validation    faults    fault injection
    storage    SQLite metadata, block rows; puts acknowledged on their records, indexed later
    segments   append-only pack files: append, sync, punch, scan, recover
    records    the record format (header page + block)
    errors, wire   error classes, request/response records
"""
