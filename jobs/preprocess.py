"""`ray job submit` entrypoint for the preprocess job; takes the same options as `facebatch preprocess`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/preprocess.py --input s3://bucket/photos --output s3://bucket/faces

Inside a submitted job RAY_ADDRESS is set, so the job joins that cluster.
"""
import sys

from facebatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
