"""What a lab run leaves behind for people and CI: boot charts (SVG), an HTML report, JUnit XML."""
