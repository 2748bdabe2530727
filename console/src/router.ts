/** Opens a console page: #/keys, #/keys/<clientId>, ... (ids are encoded; no token is ever put in a URL). */
export function go(...parts: string[]): void {
  location.hash = `#/${parts.map(encodeURIComponent).join('/')}`;
}

export function href(...parts: string[]): string {
  return `#/${parts.map(encodeURIComponent).join('/')}`;
}
