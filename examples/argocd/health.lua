-- Argo CD health check for sie.dev/ModelConfig (install it with argocd-cm.yaml).
-- Argo CD runs custom checks with only the base, table and os libraries (no string library),
-- so this uses nothing else. Rules, first match wins:
--   no status, or status/Ready not yet for metadata.generation -> Progressing
--   Stalled=True (invalid spec, unroutable, duplicate sieId, append-only conflict) -> Degraded
--   Ready=True                                                   -> Healthy
--   anything else (workers pending, no workers, gateway down...) -> Progressing, Ready's message
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c)
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  return reason .. message
end

local generation = obj.metadata.generation
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the sie-operator to observe the ModelConfig"
  return hs
end
if obj.status.observedGeneration == nil or obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the sie-operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(obj.status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local ready = condition(obj.status, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.observedGeneration ~= nil and ready.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Ready describes generation " .. tostring(ready.observedGeneration)
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
hs.status = "Progressing"
hs.message = describe(ready)
return hs
