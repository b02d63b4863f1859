# Kubernetes targets; included by the main Makefile (which defines VENV and PY).
VENV ?= .venv
PY ?= $(VENV)/bin/python

K8S_SERVICES := fetcher checksummer detector embedder indexer
# Image tag for `make images` without skaffold; skaffold tags by git commit itself.
IMAGE_TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Prefix for pushed images, e.g. IMAGE_REGISTRY=registry.example.org/team (empty: local only).
IMAGE_REGISTRY ?=
# Skaffold profile for `make deploy`: local (kind/minikube, CPU Triton), gpu, or empty for defaults.
PROFILE ?=
NAMESPACE ?= taxonstream
DIST ?= dist

.PHONY: images chart manifests deploy k8s-test

## images: build the five service images (skaffold when installed, else docker build per target)
images:
	@if command -v skaffold >/dev/null 2>&1; then \
	  skaffold build $(if $(PROFILE),-p $(PROFILE)) $(if $(IMAGE_REGISTRY),--default-repo=$(IMAGE_REGISTRY)); \
	elif command -v docker >/dev/null 2>&1; then \
	  for s in $(K8S_SERVICES); do \
	    docker build --target $$s -t $(if $(IMAGE_REGISTRY),$(IMAGE_REGISTRY)/)taxonstream-$$s:$(IMAGE_TAG) . || exit 1; \
	  done; \
	else echo "make images needs skaffold or docker" >&2; exit 1; fi

## chart: lint the chart strictly (default, GPU and local values) and package it into $(DIST)/
chart:
	$(PY) tools/k8s/manifests.py --lint
	$(PY) tools/k8s/manifests.py --lint charts/taxonstream/values-gpu.yaml
	$(PY) tools/k8s/manifests.py --lint charts/taxonstream/values-local.yaml
	$(PY) tools/k8s/manifests.py --package $(DIST)

## manifests: regenerate the plain manifests in k8s/ from the chart's default values
manifests:
	$(PY) tools/k8s/manifests.py

## deploy: build and deploy to the current kube context (skaffold; else helm with images already pushed)
deploy:
	@if command -v skaffold >/dev/null 2>&1; then \
	  skaffold run $(if $(PROFILE),-p $(PROFILE)) $(if $(IMAGE_REGISTRY),--default-repo=$(IMAGE_REGISTRY)); \
	elif command -v helm >/dev/null 2>&1; then \
	  helm upgrade --install taxonstream charts/taxonstream --namespace $(NAMESPACE) --create-namespace \
	    $(if $(PROFILE),-f charts/taxonstream/values-$(PROFILE).yaml) \
	    --set image.tag=$(IMAGE_TAG) $(if $(IMAGE_REGISTRY),--set image.registry=$(IMAGE_REGISTRY)); \
	else echo "make deploy needs skaffold or helm (and a kube context)" >&2; exit 1; fi

## k8s-test: the offline chart, manifest, image and skaffold checks
k8s-test:
	$(PY) -m pytest tests/k8s -q
