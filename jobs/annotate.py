"""`ray job submit` entrypoint for the annotate job; takes the same options as `facebatch annotate`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/annotate.py --input s3://bucket/photos --output s3://bucket/annotations

Inside a submitted job RAY_ADDRESS is set, so the job joins that cluster.
"""
import sys

from facebatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["annotate", *sys.argv[1:]]))
