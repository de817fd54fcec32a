"""The Ray batch blur job (`streetblur run`): `job` (options, stages, run), `listing` (the streamed
listing and what to skip), `actor` (decode, detect, blur, encode), `manifest` (the audit trail),
`lease` (one run per output)."""
