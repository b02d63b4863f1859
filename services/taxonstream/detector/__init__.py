"""Detector: finds the specimen in each image and stores the padded crop."""
