"""Ray job entrypoint for training: the same code as ``geoseg train``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train.py --config configs/synthetic.yaml --output /shared/runs/synthetic
"""

from geoseg.cli import main

if __name__ == "__main__":
    import sys

    sys.argv = ["geoseg", "train", *sys.argv[1:]]
    main()
