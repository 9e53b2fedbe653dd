# Two commands for a newcomer: `make demo` and `make test`. Both run `make setup` first, which is
# idempotent (a second run takes seconds).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Isolated ROS for every command run from here: logs and home in build/, localhost discovery.
export ROS_HOME ?= $(CURDIR)/build/ros_home
export ROS_LOG_DIR ?= $(CURDIR)/build/ros_home/log
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
# The Fast DDS profile for large messages. The venv's Fast DDS is 3.x (Kilted wheels): it reads
# FASTDDS_...; Fast DDS 2's FASTRTPS_... is kept from the commands, or Fast DDS 3 loads the
# profile twice and prints XMLPARSER errors (peftdml_ros/ros/dds_profile.py).
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_profile.xml
unexport FASTRTPS_DEFAULT_PROFILES_FILE
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)$(if $(AMENT_PREFIX_PATH),:$(AMENT_PREFIX_PATH))

.PHONY: setup test lint typecheck demo clean

setup:
	@bash scripts/setup_env.sh

test: setup
	@$(PY) -m pytest test

lint: setup
	@$(VENV)/bin/ruff check peftdml_ros test scripts launch
	@$(VENV)/bin/ruff format --check peftdml_ros test scripts launch

typecheck: setup
	@$(VENV)/bin/mypy

demo: setup
	@$(VENV)/bin/peftdml demo

clean:
	rm -rf build $(VENV)
