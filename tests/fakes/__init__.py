"""Stand-ins for camera libraries (OpenCV capture, picamera2) used by the tests."""
