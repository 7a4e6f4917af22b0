// Applies the gRPC service config (src/gen/service_config.ts) to Connect clients, which do not
// read service configs themselves: a deadline per method, and retries of idempotent unary reads
// on the listed codes with gRPC's jittered exponential backoff.
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { serviceConfig } from "./gen/service_config.js";

export interface MethodName {
  service: string;
  method?: string;
}
export interface RetryPolicy {
  maxAttempts: number;
  initialBackoff: string;
  maxBackoff: string;
  backoffMultiplier: number;
  retryableStatusCodes: readonly string[];
}
export interface MethodConfig {
  name: readonly MethodName[];
  timeout?: string;
  retryPolicy?: RetryPolicy;
}
export interface ServiceConfig {
  methodConfig: readonly MethodConfig[];
}

export { serviceConfig };

const seconds = (duration: string): number => Number(duration.replace(/s$/, ""));

/** The config for one method: a method entry beats its service's entry, as in gRPC. */
export function methodConfig(config: ServiceConfig, service: string, method: string): MethodConfig | undefined {
  let serviceWide: MethodConfig | undefined;
  for (const entry of config.methodConfig) {
    for (const name of entry.name) {
      if (name.service !== service) continue;
      if (name.method === method) return entry;
      if (name.method === undefined) serviceWide ??= entry;
    }
  }
  return serviceWide;
}

// "DEADLINE_EXCEEDED" -> Code.DeadlineExceeded
function codeOf(name: string): Code {
  const pascal = name.toLowerCase().replace(/(^|_)([a-z])/g, (_m, _s, c: string) => c.toUpperCase());
  return Code[pascal as keyof typeof Code];
}

export function serviceConfigInterceptor(config: ServiceConfig = serviceConfig): Interceptor {
  return (next) => async (req) => {
    const entry = methodConfig(config, req.service.typeName, req.method.name);
    if (entry === undefined) return next(req);
    let call = req;
    if (entry.timeout !== undefined && !req.header.has("grpc-timeout")) {
      // The caller's own timeoutMs wins (it has already set grpc-timeout).
      const ms = Math.round(seconds(entry.timeout) * 1000);
      req.header.set("grpc-timeout", `${ms}m`);
      call = { ...req, signal: AbortSignal.any([req.signal, AbortSignal.timeout(ms)]) };
    }
    const policy = entry.retryPolicy;
    if (policy === undefined || call.stream) return next(call);
    const retryable = new Set(policy.retryableStatusCodes.map(codeOf));
    let backoff = seconds(policy.initialBackoff);
    for (let attempt = 1; ; attempt++) {
      try {
        return await next(call);
      } catch (err) {
        const code = ConnectError.from(err).code;
        if (attempt >= policy.maxAttempts || !retryable.has(code) || call.signal.aborted) throw err;
        await new Promise((resolve) => setTimeout(resolve, Math.random() * backoff * 1000));
        backoff = Math.min(backoff * policy.backoffMultiplier, seconds(policy.maxBackoff));
      }
    }
  };
}
