"""peftdml_ros: robust multi-sensor 3D object detection for ROS 2.

`peftdml_ros.core` is ROS-free (types, synchronizer, pre/post-processing, model, backends),
`peftdml_ros.data` reads and writes nuScenes-format data and bags, `peftdml_ros.ros` is the only
code that imports rclpy, and `peftdml_ros.tools` holds the command-line tools.
"""

__version__ = "0.1.0"
