"""Absolute paths on the node, following kubeadm's layout where one exists."""

PKI_DIR = "/etc/kubernetes/pki"
ETCD_PKI_DIR = f"{PKI_DIR}/etcd"
MANIFESTS_DIR = "/etc/kubernetes/manifests"
ADDONS_DIR = "/etc/kubernetes/addons"

CA_CERT = f"{PKI_DIR}/ca.crt"
CA_KEY = f"{PKI_DIR}/ca.key"
FRONT_PROXY_CA_CERT = f"{PKI_DIR}/front-proxy-ca.crt"
ETCD_CA_CERT = f"{ETCD_PKI_DIR}/ca.crt"
SERVICE_ACCOUNT_KEY = f"{PKI_DIR}/sa.key"
SERVICE_ACCOUNT_PUB = f"{PKI_DIR}/sa.pub"

ADMIN_KUBECONFIG = "/etc/kubernetes/admin.conf"
BOOTSTRAP_KUBECONFIG = "/etc/kubernetes/bootstrap-admin.conf"
CONTROLLER_MANAGER_KUBECONFIG = "/etc/kubernetes/controller-manager.conf"
SCHEDULER_KUBECONFIG = "/etc/kubernetes/scheduler.conf"
KUBELET_KUBECONFIG = "/etc/kubernetes/kubelet.conf"
KUBE_PROXY_KUBECONFIG = "/var/lib/kube-proxy/kubeconfig.conf"
KUBE_PROXY_CONFIG = "/var/lib/kube-proxy/config.conf"
API_SERVER_PROXY_DIR = "/etc/kubernetes/kube-apiserver-proxy"
API_SERVER_PROXY_CONFIG = f"{API_SERVER_PROXY_DIR}/haproxy.cfg"

KUBELET_DIR = "/var/lib/kubelet"
KUBELET_CONFIG = f"{KUBELET_DIR}/config.yaml"
KUBELET_CONFIG_DROPIN_DIR = "/etc/kubernetes/kubelet.conf.d"
KUBELET_SERVING_CERT = f"{KUBELET_DIR}/pki/kubelet.crt"
KUBELET_SERVING_KEY = f"{KUBELET_DIR}/pki/kubelet.key"
# kubelet.conf names the "current" path. The kubelet rotates its client certificate by writing
# a new file and repointing this symlink, and client-go's certificate file store fails the
# rotation when the path is a regular file. cloud-init cannot write symlinks, so the first-boot
# script links the current path to the initial file.
KUBELET_CLIENT_CURRENT = f"{KUBELET_DIR}/pki/kubelet-client-current.pem"
KUBELET_CLIENT_INITIAL = f"{KUBELET_DIR}/pki/kubelet-client-kubecc.pem"

CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CNI_CONF_DIR = "/etc/cni/net.d"
CNI_BIN_DIR = "/opt/cni/bin"
SYSTEMD_DIR = "/etc/systemd/system"
SYSCTL_CONF = "/etc/sysctl.d/99-kubernetes.conf"
# Written by the first boot of an IPv6 node: accept_ra for the interface of the node address.
UPLINK_SYSCTL_CONF = "/etc/sysctl.d/99-kubernetes-uplink.conf"
MODULES_CONF = "/etc/modules-load.d/kubernetes.conf"
KUBECC_LIB_DIR = "/usr/local/lib/kubecc"
FIRST_BOOT_SCRIPT = f"{KUBECC_LIB_DIR}/first-boot.sh"
ETCD_DATA_DIR = "/var/lib/etcd"

# Host setup: units and scripts kubecc writes, and the resolv.conf choices at first boot.
CONTAINERD_UNIT = f"{SYSTEMD_DIR}/containerd.service"
KUBELET_UNIT = f"{SYSTEMD_DIR}/kubelet.service"
POD_ROUTES_UNIT = f"{SYSTEMD_DIR}/kubecc-pod-routes.service"
BOOTSTRAP_UNIT = f"{SYSTEMD_DIR}/kubecc-bootstrap.service"
POD_ROUTES_SCRIPT = f"{KUBECC_LIB_DIR}/pod-routes.sh"
BOOTSTRAP_SCRIPT = f"{KUBECC_LIB_DIR}/bootstrap.sh"
CNI_CONFLIST = f"{CNI_CONF_DIR}/10-kubecc-bridge.conflist"
SYSTEMD_RESOLVED_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"
HOST_RESOLV_CONF = "/etc/resolv.conf"
