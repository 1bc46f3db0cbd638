"""Media processing: where asset bytes live (`store`), the tools that process them (`tools`: ffmpeg
and its discovery, subprocesses killed on timeout or cancel, per-job work directories), and the
operations themselves (`images`, `video`, `watermark`, `probe`), which know nothing of jobs.

`operation` joins them for the jobs in `jobs/media_*.py`: load the source asset, run one
operation in a work directory, store the output under a key of its own and record it as a new
`media_assets` row derived from the source. May import settings, domain and runtime; never a job.
"""
