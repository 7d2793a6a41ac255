import { wrap } from '../test/fixtures/make-pdf.ts';
import { GERMAN } from '../test/fixtures/documents.ts';

/** Prose in the scripts the OCR script check knows, for scans made by text2image (bench/ocr-*.ts). */
export const SCRIPT_SAMPLES: Record<string, { text: string; language: string }> = {
  german: { text: wrap(`${GERMAN} ${GERMAN} ${GERMAN}`, 70).join('\n'), language: 'deu+eng' },
  arabic: {
    text: [
      'تبدأ معالجة المستندات بقراءة طبقة النص في كل صفحة من صفحات الملف.',
      'الصفحات التي لا تحتوي على نص صالح تعرض كصورة ثم تقرأ بالتعرف الضوئي.',
      'تقسم النتيجة إلى أجزاء وتحفظ في قاعدة البيانات لكل حساب على حدة.',
    ].join('\n'),
    language: 'ara',
  },
  hebrew: {
    text: [
      'עיבוד המסמכים מתחיל בקריאת שכבת הטקסט של כל עמוד בקובץ.',
      'עמודים ללא טקסט שמיש מוצגים כתמונה ונקראים בזיהוי תווים אופטי.',
    ].join('\n'),
    language: 'heb',
  },
  cyrillic: {
    text: [
      'Обработка документов начинается с чтения текстового слоя каждой страницы.',
      'Страницы без пригодного текста отображаются как изображение и распознаются.',
    ].join('\n'),
    language: 'rus',
  },
  capitals: { text: 'TABLE OF CONTENTS', language: 'deu+eng' },
};
