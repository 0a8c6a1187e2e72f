"""IoT sensor readings over MQTT."""
