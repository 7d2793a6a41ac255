/**
 * The text of a dynamic ("pure") XFA form, page by page, from pdf.js's layout of it (its
 * `allXfaHtml`: one node per page, the form's text in spans, filled-in values in inputs).
 * Such a file's PDF pages hold only a placeholder ("Please wait... your PDF viewer may not
 * be able to display this type of document"), which is all poppler reads: government
 * forms came back as that one sentence, completed (issue 13, pdf.js's xfa_filled_*.pdf).
 */
export interface XfaNode {
  name: string;
  attributes?: { value?: unknown; type?: unknown; selected?: unknown } | undefined;
  children?: XfaNode[] | undefined;
  value?: unknown;
}

/** One string per page: the texts and values in document order, one per line. */
export function xfaPageTexts(root: XfaNode): string[] {
  return (root.children ?? []).map((page) => {
    const lines: string[] = [];
    collect(page, lines);
    return lines.join('\n');
  });
}

function collect(node: XfaNode, lines: string[]): void {
  const push = (value: unknown) => {
    if (typeof value === 'string' && value.trim() !== '') lines.push(value.trim());
  };
  switch (node.name) {
    case 'input':
      // Check boxes and radio buttons carry export values ("Y", "N"), not words.
      if (node.attributes?.type !== 'checkbox' && node.attributes?.type !== 'radio') {
        push(node.attributes?.value);
      }
      return;
    case 'textarea':
      push(node.attributes?.value ?? node.value);
      return;
    case 'select':
      for (const option of node.children ?? []) {
        if (option.attributes?.selected) push(option.value);
      }
      return;
    default:
      push(node.value);
      for (const child of node.children ?? []) collect(child, lines);
  }
}
