"""`ray job submit` entrypoint for the annotate job; takes the same options as `facebatch annotate`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/annotate.py --input s3://bucket/photos --output s3://bucket/annotations

Inside a submitted job RAY_ADDRESS is set, so the job joins that cluster. The driver does not
import torch (only the analyzer actors need it): `facebatch.cli.main` builds only the named
subcommand's parser (tests/test_annotate_startup.py checks it).
"""
import sys

from facebatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["annotate", *sys.argv[1:]]))
