"""The enrich stage: names for addresses. Kubernetes state (pods, Services, nodes, from a
watch of the API server or a file, in `k8s/`) and the kernel's conntrack (ClusterIP /
NodePort -> the backend that answered) turn IPs into pods, workloads and Services."""
