// The one React API this package uses, so that building it needs no React types; apps bring
// React itself (an optional peer dependency).
declare module "react" {
  export function useSyncExternalStore<T>(
    subscribe: (onChange: () => void) => () => void,
    getSnapshot: () => T,
    getServerSnapshot?: () => T,
  ): T;
}
