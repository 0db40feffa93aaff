"""Datasets: conversion of public datasets to verl's parquet schema (and, later, the RL dataset)."""
