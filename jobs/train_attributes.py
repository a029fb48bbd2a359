"""`ray job submit` entrypoint: train an attribute model; same arguments as `facebatch train attributes`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train_attributes.py --config attributes data='["s3://bucket/celeba6k", "s3://bucket/genki4k"]' \
        storage_path=s3://bucket/runs
"""
import sys

from facebatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "attributes", *sys.argv[1:]]))
