// TypeScript declarations of lowbit's page API (web/js/lowbit.js).

/** Stable error codes carried by every error's `.code`. */
export type ErrorCode =
  | 'WEBGPU_NOT_SUPPORTED'
  | 'MODEL_LOADING_FAILED'
  | 'OUT_OF_MEMORY'
  | 'INVALID_CONFIG'
  | 'UNSUPPORTED_MODEL'
  | 'CONTEXT_OVERFLOW'
  | 'CANCELLED';

/** An `Error` with a stable code. */
export interface LowbitError extends Error {
  code: ErrorCode;
}

/** Configuration: the TOML keys of SPEC §2, as sections (`{quantization: {method: 'int4'}}`) or dotted keys. */
export type Config = Record<string, unknown>;

/** A loading step: download (or cache), quantize (per tensor), compile. */
export interface Progress {
  phase: 'download' | 'cache' | 'quantize' | 'compile';
  loaded: number;
  total: number;
  detail: string;
}

export interface ModelInfo {
  name: string;
  architecture: string;
  layers: number;
  contextLength: number;
  vocabSize: number;
  parameters: number;
  quantization: string;
  weights: string;
  weightBytes: number;
  backend: 'webgpu' | 'cpu';
  fromCache: boolean;
  bytesFetched: number;
  downloadMs: number;
  loadMs: number;
}

export interface GenerateOptions {
  prompt: string;
  maxTokens?: number;
  /** 0 = greedy. */
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  stop?: string[];
  /** Wrap the prompt in the model's chat template as a user message. */
  chat?: boolean;
  callback?: (token: string, isLast: boolean, tokenId: number | null) => void;
}

export interface GenerationResult {
  text: string;
  tokens: number[];
  promptTokens: number;
  finishReason: 'stop' | 'length' | 'cancelled';
  cancelled: boolean;
  stats: Record<string, number>;
  model: ModelInfo;
}

export interface TokenEvent {
  token: string;
  isLast: boolean;
  tokenId: number | null;
}

export interface PerformanceStats {
  timeToFirstTokenMs: number | null;
  prefillTokensPerSecond: number | null;
  tokensPerSecond: number | null;
  promptTokens: number;
  generatedTokens: number;
  latencyP50Ms: number;
  latencyP95Ms: number;
  memory: { weightBytes: number; kvCacheBytes: number; jsHeapBytes: number | null };
  backend: string | null;
  profile: string | null;
}

export interface Capabilities {
  backend: 'webgpu' | 'cpu';
  backendReason: string;
  device: string;
  driver: string;
  kernelFeatures: string[];
  profile: string;
  profileReason: string;
  adapter: {
    name: string;
    driver: string;
    backend: string;
    deviceType: string;
    isFallbackAdapter: boolean;
    features: string[];
    limits: Record<string, number>;
  } | null;
  simd: 'simd128' | 'scalar';
  cpuThreads: number;
  cpuThreadsReason: string;
  crossOriginIsolated: boolean;
}

export interface Correction {
  key: string;
  old: string;
  new: string;
  reason: string;
}

export interface Validation {
  status: 'valid' | 'corrected' | 'invalid';
  valid: boolean;
  errors: { key: string; message: string }[];
  warnings: { key: string; message: string }[];
  corrections: Correction[];
  corrected: Config;
  profile: string;
  profileReason: string;
}

export class WebGPUStreamingInference {
  constructor(options?: {
    model?: string | File | Blob;
    config?: Config;
    onProgress?: (p: Progress) => void;
    cache?: boolean;
    userAgent?: string;
  });
  /** Resolves once the worker is up and the model (if given) is loaded. */
  readonly ready: Promise<ModelInfo | { capabilities: Capabilities; validation: Validation }>;
  capabilities?: Capabilities;
  validation?: Validation;
  load(model: string | File | Blob, options?: { onProgress?: (p: Progress) => void }): Promise<ModelInfo>;
  generate(options: GenerateOptions): Promise<string>;
  generateDetailed(options: GenerateOptions): Promise<GenerationResult>;
  stream(options: Omit<GenerateOptions, 'callback'>): AsyncGenerator<TokenEvent>;
  stop(): Promise<{ stopped: boolean }>;
  score(prompt: string, tokens: number[]): Promise<{ argmax: number; gap: number }[]>;
  getPerformanceStats(): PerformanceStats;
  detectCapabilities(): Promise<Capabilities>;
  optimizeForLatency(): Promise<Config>;
  optimizeForBrowser(name: 'chrome' | 'edge' | 'firefox' | 'safari' | 'mobile' | string): Promise<unknown>;
  dispose(): void;
}

export function validateConfiguration(config: Config, options?: { browser?: string }): Promise<Validation>;
export function detectCapabilities(config?: Config): Promise<Capabilities>;
export function runConformance(config?: Config, filter?: string): Promise<{
  backend: { name: string; device: string; features: string[] };
  profile: string;
  results: { op: string; shape: string; format: string; passed: boolean; nmse?: number; error?: string }[];
}>;
export function registrations(): Promise<{ adapters: string[]; backends: string[]; profiles: string[] }>;
