"""ROS-free core: types, configuration, synchronizer, pre/post-processing, model and backends.

Nothing under this package imports rclpy or any ROS message package; a test checks that.
"""
