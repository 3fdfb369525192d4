"""The kwok lifecycle the sandbox simulates (kwok ``Stage`` objects, written by us).

kwok v0.8 needs its stages spelled out. Ours model what matters to an LLM operator:

* **Nodes** get their Ready/pressure conditions and addresses once; kwok's lease renewal
  (``--node-lease-duration-seconds``) keeps them healthy afterwards.
* **Pods** go ``Pending -> Running`` with their init containers *Completed* and their
  containers *started but not ready* (TGI loading weights: the port refuses connections),
  then become Ready after the delay in the pod annotation
  ``sandbox.qwenops.io/ready-after`` (a Go duration such as ``45s``; none = at once). The
  e2e and demo set it from the replica model's cold start, so the autoscaler faces real
  not-ready-yet replicas exactly as on GPUs. A pod annotated ``sandbox.qwenops.io/init-pending``
  is held not Ready until that annotation is removed (by :mod:`.initpods`, which runs its
  ``model-pull`` init container for real); the delay counts from then.
* **Deletion** is immediate once ``deletionTimestamp`` is set (no kubelet to drain).
"""

from __future__ import annotations

READY_AFTER_ANNOTATION = "sandbox.qwenops.io/ready-after"
#: While a pod carries this annotation kwok keeps it not Ready: the init-container seam
#: (:mod:`.initpods`) runs the pod's ``model-pull`` init container for real, then removes it.
INIT_PENDING_ANNOTATION = "sandbox.qwenops.io/init-pending"

_NODE_INITIALIZE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: qwen-node-initialize
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: NotIn
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {type: Ready, status: "True", reason: KubeletReady, message: "simulated by kwok",
         lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
      {{ range $t := list "MemoryPressure" "DiskPressure" "PIDPressure" "NetworkUnavailable" }}
      - {type: {{ $t }}, status: "False", reason: Simulated, message: "",
         lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
      {{ end }}
      addresses:
      - {type: InternalIP, address: {{ NodeIP | Quote }}}
      - {type: Hostname, address: {{ .metadata.name | Quote }}}
      phase: Running
"""

_POD_START = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: qwen-pod-start
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.spec.nodeName', operator: Exists}
    - {key: '.status.phase', operator: In, values: ['Pending']}
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Running
      startTime: {{ $now | Quote }}
      conditions:
      - {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: Ready, status: "False", reason: ContainersNotReady, lastTransitionTime: {{ $now | Quote }}}
      - {type: ContainersReady, status: "False", reason: ContainersNotReady, lastTransitionTime: {{ $now | Quote }}}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: true
        restartCount: 0
        state: {terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }},
                             finishedAt: {{ $now | Quote }}}}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: false
        started: true
        restartCount: 0
        state: {running: {startedAt: {{ $now | Quote }}}}
      {{ end }}
      {{ with NodeIPWith .spec.nodeName }}
      hostIP: {{ . | Quote }}
      {{ end }}
      {{ $uid := or .metadata.uid "" }}
      {{ $name := or .metadata.name "" }}
      {{ $ns := or .metadata.namespace "" }}
      {{ with PodIPWith .spec.nodeName false $uid $name $ns }}
      podIP: {{ . | Quote }}
      podIPs:
      - ip: {{ . | Quote }}
      {{ end }}
"""

_POD_READY = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: qwen-pod-ready
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.status.phase', operator: In, values: ['Running']}
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: NotIn
      values: ['True']
    - {key: '.metadata.annotations["sandbox.qwenops.io/init-pending"]', operator: DoesNotExist}
  delay:
    durationMilliseconds: 0
    durationFrom:
      expressionFrom: '.metadata.annotations["sandbox.qwenops.io/ready-after"]'
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: true
        started: true
        restartCount: 0
        state: {running: {startedAt: {{ $now | Quote }}}}
      {{ end }}
"""

_POD_DELETE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: qwen-pod-delete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: Exists}
  next:
    delete: true
"""


def stages_yaml() -> str:
    """All stages as one multi-document YAML for ``kwok --config``."""
    return "---\n".join([_NODE_INITIALIZE, _POD_START, _POD_READY, _POD_DELETE])
