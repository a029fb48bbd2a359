"""`ray job submit` entrypoint for the annotate job; takes the same options as `facebatch annotate`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/annotate.py --input s3://bucket/photos --output s3://bucket/annotations

Inside a submitted job RAY_ADDRESS is set, so the job joins that cluster.

Only the annotate subcommand's parser is built: the command line's other subcommands import
torch (through preprocess and the model heads), which the annotate driver does not need; it
starts Ray seconds sooner without it.
"""
import sys

import facebatch.cli as cli

if __name__ == "__main__":
    cli.SUBCOMMANDS = {"annotate": cli.SUBCOMMANDS["annotate"]}
    sys.exit(cli.main(["annotate", *sys.argv[1:]]))
