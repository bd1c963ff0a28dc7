"""Ray job entrypoint for archive prediction: the same code as ``geoseg predict``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/predict.py --config configs/predict.yaml
    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/predict.py --model /shared/bundle --input '/shared/scenes/*.tif' --output /shared/job1

Inside a Ray job, RAY_ADDRESS is set by Ray, so the job attaches to the cluster it was submitted to. The job
exits 1 when any scene failed, so `ray job submit` exits non-zero too (tests/test_cluster.py).
"""

from geoseg.cli import main

if __name__ == "__main__":
    import sys

    sys.argv = ["geoseg", "predict", *sys.argv[1:]]
    main()
