-- Argo CD health check for serving.qwenops.io/QwenDeployment.
-- Installed by argocd-cm.yaml under resource.customizations.health.serving.qwenops.io_QwenDeployment
-- (keep the two copies identical: a unit test checks it). Reads only status, which the
-- operator owns; the autoscaler never writes spec, so Argo CD never sees drift from scaling.
hs = {}
local generation = obj.metadata and obj.metadata.generation
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status."
  return hs
end
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation ..
    " (status is for generation " .. status.observedGeneration .. ")."
  return hs
end
local byType = {}
for _, c in ipairs(status.conditions) do
  -- A condition computed for an older spec says nothing about the current one.
  local stale = generation ~= nil and c.observedGeneration ~= nil and c.observedGeneration < generation
  if c.type ~= nil and not stale then
    byType[c.type] = c
  end
end
local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.message or fallback
  if c.reason ~= nil and c.reason ~= "" then
    text = c.reason .. ": " .. text
  end
  return text
end
local degraded, progressing, ready = byType["Degraded"], byType["Progressing"], byType["Ready"]
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "The operator reports the QwenDeployment degraded.")
  return hs
end
if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(progressing, "Rolling out.")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "All replicas ready.")
  return hs
end
hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the Ready condition.")
return hs
