// Types of bin/launcher.mjs.
export declare const ONE_CPU_NODE_FLAGS: readonly string[]
export declare const LAUNCHER_ENV: string
export declare function cpuBudget (cgroupCpuMax?: string): number
export declare function parseCpuMax (text: string | undefined): number | undefined
export declare function missingNodeFlags (cpus: number, execArgv: readonly string[]): string[]
export declare function gcMode (execArgv?: readonly string[]): 'single-threaded' | 'concurrent'
