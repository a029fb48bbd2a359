"""`ray job submit` entrypoint: train a keypoint model; same arguments as `facebatch train keypoints`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train_keypoints.py --config keypoints68 data=s3://bucket/faces storage_path=s3://bucket/runs
"""
import sys

from facebatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "keypoints", *sys.argv[1:]]))
