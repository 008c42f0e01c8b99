"""What the user asked for: the lab, its VMs and its distros, validated at the edge."""
