.PHONY: test demo

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

bench:
	cd benchmarks && python -m pytest -q -p no:cacheprovider --benchmark-only
