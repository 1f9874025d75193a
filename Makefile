.PHONY: test demo docs bench

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

docs:
	bash scripts/docs.sh

bench:
	cd benchmarks && python -m pytest -q -p no:cacheprovider --benchmark-only
