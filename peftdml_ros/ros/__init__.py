"""The ROS 2 layer: the only code in this package that imports rclpy and ROS messages."""
